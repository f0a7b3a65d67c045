"""SSANet: MAC loss (Eq. 2), navigator ranking, parts, DSM + OP, the three training stages."""
import timm
import torch

import timm_fgvc  # noqa: F401
from timm_fgvc.engine.trainer import apply_stage
from timm_fgvc.layers import box_iou
from timm_fgvc.models.ssanet import mac_loss, ranking_loss


def tiny_ssanet(num_classes=5, **kwargs):
    torch.manual_seed(0)
    return timm.create_model('ssanet_resnet18', num_classes=num_classes, backbone='test_resnet', **kwargs)


def test_mac_loss_matches_eq2_and_rewards_corresponding_parts():
    torch.manual_seed(0)
    parts = torch.randn(2, 3, 8)
    unit = torch.nn.functional.normalize(parts, dim=-1)
    expected = []
    for xi, tau in ((0, 1), (1, 0)):
        s = unit[xi] @ unit[tau].T  # S_jm
        expected.append(sum(torch.log(1 + sum(torch.exp(s[j, m] - s[j, j]) for m in range(3) if m != j))
                            for j in range(3)) / 3)
    assert torch.allclose(mac_loss(parts), torch.stack(expected).mean(), atol=1e-5)
    aligned = torch.stack([parts[0], parts[0] + 0.05 * torch.randn(3, 8)])  # part j matches part j
    permuted = torch.stack([parts[0], parts[0][[1, 2, 0]]])  # part j matches another part
    assert mac_loss(aligned) < mac_loss(permuted)
    assert mac_loss(parts[:1]) == 0  # no pair in a batch of one


def test_ranking_loss_orders_navigator_scores_like_part_confidence():
    confidence = torch.tensor([[0.9, 0.1, 0.5]])
    ordered = torch.tensor([[5.0, 1.0, 3.0]], requires_grad=True)
    assert ranking_loss(ordered, confidence) == 0
    reversed_scores = torch.tensor([[1.0, 5.0, 3.0]], requires_grad=True)
    loss = ranking_loss(reversed_scores, confidence)
    loss.backward()
    assert loss > 0 and reversed_scores.grad[0, 0] < 0 < reversed_scores.grad[0, 1]  # raise part 0, lower part 1


def test_parts_are_ranked_non_overlapping_and_batching_is_exact():
    model = tiny_ssanet().eval()
    torch.manual_seed(1)
    x = torch.randn(3, 3, 128, 128)
    _, details = model.attention_maps(x, return_details=True)
    scores, boxes = details['region_scores'], details['region_boxes']
    assert torch.all(scores[:, :-1] >= scores[:, 1:])  # part j = rank j
    assert torch.all(box_iou(boxes, boxes).triu(1) <= model.nms_threshold + 1e-6)
    assert details['scale_candidates'].shape == (3, model.num_parts, model.num_scales, 4)
    # the middle candidate is the box itself, up to float rounding (x1 + 1.0 * (x2 - x1) need not be x2 exactly)
    assert torch.allclose(details['scale_candidates'][:, :, model.num_scales // 2], boxes, atol=1e-4)
    singles = torch.cat([model(x[i:i + 1]) for i in range(3)])
    assert torch.allclose(model(x), singles, atol=1e-4) and torch.allclose(model(x), model(x), atol=1e-6)
    out = model.forward_train(x)
    assert torch.allclose(out.logits['final'], out.logits['dsm'] + out.logits['op'])  # parts only: DSM + OP


def test_three_stages_train_dsm_then_op_then_the_part_network():
    model = tiny_ssanet()
    dsm, op, part_net = model.training_stages()
    trainable = lambda: {n.split('.')[0] if not n.startswith('heads') else n.split('.')[1]  # noqa: E731
                         for n, p in model.named_parameters() if p.requires_grad}
    apply_stage(model, dsm)
    assert trainable() == {'backbone', 'navigator', 'part', 'dsm'} and 'loss_dsm' in dsm.loss_terms
    apply_stage(model, op)
    assert trainable() == {'op'} and op.loss_terms == ('loss_op',)
    apply_stage(model, part_net)
    assert trainable() == {'backbone', 'navigator', 'part'} and 'loss_op' not in part_net.loss_terms


def test_candidate_features_from_separate_crops_or_a_shared_map():
    x = torch.randn(2, 3, 96, 96)
    for mode in ('roi_align', 'crops'):
        model = tiny_ssanet(candidate_features=mode).eval()
        out = model._forward_parts(x)
        assert out['candidate_features'].shape == (2, 4, 5, model.backbone_features)
        # the middle candidate is the part itself: from crops its features equal the part's own
        if mode == 'crops':
            assert torch.allclose(out['candidate_features'][:, :, 2], out['part_features'], atol=1e-4)


def test_short_stage_training_lowers_each_stages_losses(short_training):
    model = tiny_ssanet(num_classes=4)
    dsm, op, _ = model.training_stages()
    apply_stage(model, dsm)
    losses = short_training(model, num_classes=4, image_size=96, lr=0.02, terms=dsm.loss_terms)
    for term in ('loss_part', 'loss_dsm'):
        first, last = losses[term]
        assert last < 0.7 * first, (term, first, last)
    apply_stage(model, op)  # then OP on the parts the first stage learned to find, all else fixed
    first, last = short_training(model, num_classes=4, image_size=96, lr=0.02, terms=op.loss_terms)['loss_op']
    assert last < 0.7 * first, (first, last)
