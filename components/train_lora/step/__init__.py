"""What runs in the KFP step (the runtime image): launch, job building, backends, `kftune launch`.

Nothing here imports `torch`.
"""
