"""Option groups and their defaults: one home for each (plain Python, no TensorFlow).

The command line builds its flags and defaults from these classes, so that
`s2s-attn --help` needs no TensorFlow; the Python API takes the same names.
"""

import dataclasses
