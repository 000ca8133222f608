"""kftune components evaluate package."""
