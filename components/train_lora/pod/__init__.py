"""What runs inside each training pod (the trainer image): staging, the trainer loop, data, kernels.

Nothing here imports `kfp` or `kubernetes`.
"""
