"""The model package: what an exported model is and how it is loaded, below train/ and score/.

Modules: :mod:`~pipeline.model.meta` (the model folder format, ``model.json``, finding a model; no torch),
:mod:`~pipeline.model.network` (backbones and heads), :mod:`~pipeline.model.pixels` (crop -> tensor, for training
and scoring alike), :mod:`~pipeline.model.loaded` (``LoadedModel``: inference), and
:mod:`~pipeline.model.torchvision_import` (torchvision without ``torch._dynamo``). Nothing here is imported until
used: the score driver plans with ``meta`` alone.
"""
