"""The blosam_med MONAI Label app's tasks: infers, trainers, active learning, the checked datastore."""
