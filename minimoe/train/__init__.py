"""Training from scratch: losses, the AdamW optimiser, data, gradient checks and the training loop.

    from minimoe.train import TrainConfig, Trainer
    trainer = Trainer.new(TrainConfig(preset="tiny-moe", max_iters=50, out="runs/tiny"))
    metrics = trainer.run()

Every gradient is written by hand beside its forward pass in minimoe/nn/; `minimoe.train.gradcheck`
checks them against finite differences. See docs/training.md for the math.
"""
