"""`tf.function` as this package traces its graphs: without AutoGraph."""

import functools

import tensorflow as tf


def graph_function(function=None, **options):
    """`tf.function(function, autograph=False, **options)`; also a decorator.

    The traced code (the tokenizers, the search loops, `keras.ops` layers)
    writes its loops and branches as graph ops already, so AutoGraph has
    nothing to convert; left on, it still parses and rewrites the source of
    every function the trace calls, which was a third of the time an export
    takes to trace.
    """
    if function is None:
        return functools.partial(graph_function, **options)
    return tf.function(function, autograph=False, **options)
