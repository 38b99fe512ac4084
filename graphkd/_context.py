"""The graph-context vocabulary shared by the input readers and the losses (a leaf module).

A method declares the context keywords its ``forward`` takes (``DistillLoss.context``); the
readers in :mod:`graphkd.inputs` produce exactly these keys from a PyG or DGL batch.
"""

#: The keys :func:`graphkd.inputs.graph_context` reads: the context keywords a method may declare.
CONTEXT_KEYS = ("batch", "edge_index", "pos", "num_nodes", "num_graphs")
#: The keys that describe single nodes (a method taking them cannot get pooled features).
NODE_CONTEXT = ("batch", "edge_index", "pos")
