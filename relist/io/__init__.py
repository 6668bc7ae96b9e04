"""The ground floor: config files, safetensors weights and the read side of saved model folders.

Every layer (data, models, eval, rerank, serve, train, cli) may import this package, so it imports
nothing else from relist: loading a trained model must never mean importing the code that trains one.
"""
