"""deploy_model: the fine-tuned model served by KServe behind a URL."""
