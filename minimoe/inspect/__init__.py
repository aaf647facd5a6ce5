"""Looking inside models: the real-model estimator, the hardware table, traces and plots."""
