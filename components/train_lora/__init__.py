"""kftune components train_lora package."""
