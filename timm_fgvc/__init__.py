"""timm-fgvc: fine-grained visual classification methods as timm models.

`import timm_fgvc` registers every method with timm, so `timm.create_model('s3n_resnet50', ...)` works.
"""
from . import layers, models
from .catalog import register_method
from .models import FGVCModel, FGVCOutput, TrainingStage
from .optim import parameter_groups

__version__ = '0.1.0'
