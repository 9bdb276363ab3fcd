"""The kvstore: the mesh's block registry, its client and its block transports.

``services.kvstore.server.serve_kvstore`` starts a store;
``services.kvstore.client.KvStoreClient`` talks to one. This package imports
nothing on its own so the store process does not pay for torch.
"""
