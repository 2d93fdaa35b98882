"""The 2DTM search: configuration, the engine and its statistics, checkpoints, detection, p-values and the results folder."""
