"""register_model: the adapter (and the merged model) in the Kubeflow Model Registry."""
