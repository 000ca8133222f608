"""kftune components package."""
