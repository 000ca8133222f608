"""kftune components download_dataset package."""
