"""One module per side, each run inside its own `bench.worker` subprocess: `secateurs` (Keras 3 + the engine) and
`tfmot` (tf_keras + tensorflow-model-optimization, TF_USE_LEGACY_KERAS=1). Each exposes TASKS: name -> function
of JSON-able keyword arguments returning a JSON-able dict."""
