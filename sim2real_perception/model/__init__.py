"""Model registry: build a network by name from a config section (timm-style)."""
from .depth_coding import decode_depth, encode_depth
from .mean_prior import MeanPriorNet
from .twin_vae import DepthSegNet, ModelConfig, TwinVAE

_REGISTRY = {'twin_vae': TwinVAE}


def register_model(name):
    """Add a model class to the registry (class decorator)."""
    def wrap(cls):
        _REGISTRY[name] = cls
        return cls
    return wrap


def deployed_network(model_cfg):
    """Build the deployed network an exported directory describes (``model.architecture``)."""
    cfg = model_cfg if isinstance(model_cfg, ModelConfig) else ModelConfig.from_dict(model_cfg)
    if cfg.architecture == 'mean_prior':
        return MeanPriorNet(cfg)
    return DepthSegNet(cfg)


def list_models():
    return sorted(_REGISTRY)


def build_model(model_cfg, name='twin_vae'):
    """Instantiate a registered model from a ``model:`` config dict or ModelConfig."""
    if name not in _REGISTRY:
        raise KeyError(f'unknown model {name!r}; available: {list_models()}')
    cfg = model_cfg if isinstance(model_cfg, ModelConfig) else ModelConfig.from_dict(model_cfg)
    return _REGISTRY[name](cfg)


__all__ = ['DepthSegNet', 'MeanPriorNet', 'ModelConfig', 'TwinVAE', 'build_model',
           'decode_depth', 'deployed_network', 'encode_depth', 'list_models',
           'register_model']
