"""export_model: a LoRA adapter merged into its base model, in Hugging Face layout."""
