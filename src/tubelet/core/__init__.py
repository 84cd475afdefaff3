"""The bottom layer: what every layer may use and that knows no other layer of tubelet.

``dist`` (collectives that are the identity in one process), ``rng`` (global RNG states), ``io`` (atomic
files, safetensors), ``ckpt_format`` (the training-checkpoint format and its one reader), ``runtime``
(thread policy), ``batch`` (the batch's keys).
"""
