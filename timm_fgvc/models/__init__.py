"""Method models; importing this package registers every variant with timm."""
from ._base import FGVCModel, FGVCOutput, TrainingStage, check_images, create_backbone
from ._builder import HUB_ORG, PUBLISHED_WEIGHTS, UnpublishedWeightsError, build_fgvc_model, fgvc_cfg, tagged_cfgs
from .caa import CAA
from .hsm import HSM
from .lfd import LFD
from .s3n import S3N
from .ssanet import SSANet
