"""kftune components download_model package."""
