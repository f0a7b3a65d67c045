"""Optimizer parameter groups of a method (or a plain timm model) as its paper trains it: any training loop.

    import timm, timm_fgvc
    model = timm.create_model('s3n_resnet50', num_classes=200, pretrained_backbone=True)
    optimizer = torch.optim.SGD(timm_fgvc.parameter_groups(model, lr=0.01, backbone_lr=0.001, weight_decay=1e-4),
                                momentum=0.9)

A method's new layers train at `lr`, its pretrained backbone(s) at `backbone_lr`, and the parts its paper trains
at their own rate (`model.param_group_rules`: S3N's Gaussian widths at 2e-5 x lr, SSANet's DSM / OP heads, HSM's
saliency score) in groups of their own. timm's `create_optimizer_v2(model, ...)` knows none of these rules; it
takes these groups in place of the model.
"""
from typing import List, Optional

import torch.nn as nn

__all__ = ['parameter_groups']


def parameter_groups(model: nn.Module, lr: float, backbone_lr: Optional[float] = None,
                     weight_decay: float = 0.) -> List[dict]:
    """Pretrained backbone parameters (`backbone_lr`, default `lr`) and the method's new parameters (`lr`), plus
    one group per `model.param_group_rules` prefix (its own lr scale of the new-layer lr and weight decay). Each
    group is named (`backbone`, `new`, `new:<prefix>`) and carries its `lr` and `weight_decay`."""
    backbone_lr = lr if backbone_lr is None else backbone_lr
    if hasattr(model, 'pretrained_parameter_names'):
        pretrained = set(model.pretrained_parameter_names())
    else:
        heads = model.pretrained_cfg.get('classifier') or ()
        heads = (heads,) if isinstance(heads, str) else tuple(heads)
        pretrained = {n for n, _ in model.named_parameters() if not any(n.startswith(h + '.') for h in heads)}
    rules = dict(getattr(model, 'param_group_rules', {}) or {})
    named = list(model.named_parameters())
    rule_of = {n: next((prefix for prefix in rules if n.startswith(prefix)), None) for n, _ in named}
    groups = [
        {'params': [p for n, p in named if n in pretrained and rule_of[n] is None], 'lr': backbone_lr,
         'weight_decay': weight_decay, 'name': 'backbone'},
        {'params': [p for n, p in named if n not in pretrained and rule_of[n] is None], 'lr': lr,
         'weight_decay': weight_decay, 'name': 'new'},
    ]
    for prefix, rule in rules.items():
        params = [p for n, p in named if rule_of[n] == prefix]
        if params:
            groups.append({'params': params, 'lr': lr * rule.get('lr_scale', 1.0),
                           'weight_decay': rule.get('weight_decay', weight_decay), 'name': f'new:{prefix}'})
    return groups
