"""Optimizers: Keras' Adam with TensorFlow's fused step (`FusedAdam`).

It imports TensorFlow only where it runs under that backend, so the module
loads (and a model compiled with it loads) on every Keras backend.
"""

import keras


def _fused(dtype):
    """Whether a `dtype` tensor takes the TensorFlow kernels here: float32 under TensorFlow."""
    return (keras.backend.backend() == "tensorflow"
            and keras.backend.standardize_dtype(dtype) == "float32")


@keras.saving.register_keras_serializable(package="keras_s2s_attn")
class FusedAdam(keras.optimizers.Adam):
    """Keras' Adam, each variable's step one TensorFlow kernel.

    The same update as `keras.optimizers.Adam`, which it subclasses (same
    arguments, state, config and checkpoints): m ← β₁m + (1 − β₁)g,
    v ← β₂v + (1 − β₂)g², w ← w − η·√(1 − β₂ᵗ)/(1 − β₁ᵗ)·m/(√v + ε).
    Under the TensorFlow backend a float32 variable's step is TensorFlow's
    `ResourceApplyAdam`, one pass over the variable, its moments and its
    gradient, where Keras writes about twenty elementwise operations, each a
    pass of its own (on the CMUdict model of `benchmarks/vs_pytorch.py`, 634
    operations and 10% of a training step's operation time). Under other
    backends, with `amsgrad`, or for a variable of another dtype, the step
    is Keras' own. `train()` compiles with it.

    An embedding's gradient (a `tf.IndexedSlices`) has its repeated rows
    summed before it is squared, as Adam's g is; Keras 3's Adam squares each
    lookup's slice apart and sums the squares.

    With `clipnorm` (each gradient scaled to a norm of at most `clipnorm`),
    a float32 gradient's norm under TensorFlow is one `L2Loss` kernel and
    the scaling one product: two passes over it where `tf.clip_by_norm`
    takes four. An embedding's gradient is clipped by the norm of the
    gradient itself, its repeated rows summed, not of its slices.

    Args:
        As `keras.optimizers.Adam`.

    Example:

    >>> model.compile(FusedAdam(1e-3, clipnorm=1.0),
    ...               loss=MaskedSparseCategoricalCrossentropy())
    """

    def _clip_by_norm(self, values, axes=None):
        # Keras' and TensorFlow's clip_by_norm square, sum, multiply and divide
        # the gradient, a pass each; an L2Loss and a product are two.
        if axes is not None or not _fused(values.dtype):
            return super()._clip_by_norm(values, axes)
        import tensorflow as tf

        values = tf.convert_to_tensor(values)  # an embedding's rows summed, as in the step
        norm = tf.sqrt(2.0 * tf.nn.l2_loss(values))
        return values * (self.clipnorm / tf.maximum(norm, self.clipnorm))

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad or not _fused(variable.dtype):
            return super().update_step(gradient, variable, learning_rate)
        # Imported here: the class loads on every backend.
        import tensorflow as tf

        dtype = "float32"
        index = self._get_variable_index(variable)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        step = tf.cast(self.iterations + 1, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[index].value.handle,
            v=self._velocities[index].value.handle, beta1_power=tf.pow(beta_1, step),
            beta2_power=tf.pow(beta_2, step), lr=tf.cast(learning_rate, dtype), beta1=beta_1,
            beta2=beta_2, epsilon=tf.cast(self.epsilon, dtype),
            # An embedding's tf.IndexedSlices: its repeated rows summed, as Adam's g.
            grad=tf.cast(tf.convert_to_tensor(gradient), dtype))
