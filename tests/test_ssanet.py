"""SSANet: MAC loss (Eq. 1-2), navigator ranking (NTS-Net), proposals and parts, DSM + OP, the three stages."""
import copy

import pytest
import timm
import torch
import torch.nn.functional as F

import timm_fgvc  # noqa: F401
from timm_fgvc.engine.trainer import apply_stage
from timm_fgvc.layers import box_iou, crop_regions
from timm_fgvc.models.ssanet import Navigator, mac_loss, ranking_loss


def tiny_ssanet(num_classes=5, **kwargs):
    """The paper's defaults on timm's test_resnet, DSM on the 2 x 2 maps of its 48 px part crops at 96 px."""
    torch.manual_seed(0)
    return timm.create_model('ssanet_tiny', num_classes=num_classes, **kwargs)


def assert_ranked(scores, mask):
    """Proposal scores descend over the real slots, and the padded slots (NMS left fewer boxes) come last."""
    valid = scores.masked_fill(~mask, float('-inf'))
    assert torch.all(valid[:, :-1] >= valid[:, 1:])


def _eq2(unit, xi, tau):
    """Eq. 2 for one ordered pair of samples, written out: (1 / K) sum_j log(1 + sum_{m != j} e^(S_jm - S_jj))."""
    s = unit[xi] @ unit[tau].T  # S_jm
    parts = s.shape[0]
    return sum(torch.log(1 + sum(torch.exp(s[j, m] - s[j, j]) for m in range(parts) if m != j))
               for j in range(parts)) / parts


def test_mac_loss_matches_eq1_and_eq2_and_rewards_corresponding_parts():
    torch.manual_seed(0)
    batch, parts = 3, 4
    features = torch.randn(batch, parts, 8)
    unit = F.normalize(features, dim=-1)
    pairs = [(xi, tau) for xi in range(batch) for tau in range(batch)]
    # Eq. 1: lambda * sum over xi, tau = 1..B (xi = tau included) next to a CE summed over B * K parts; divided by
    # B * K like the part CE (a mean over the parts), MAC keeps the paper's relative weight
    paper = sum(_eq2(unit, xi, tau) for xi, tau in pairs) / (batch * parts)
    assert torch.allclose(mac_loss(features), paper, atol=1e-5)
    distinct = torch.stack([_eq2(unit, xi, tau) for xi, tau in pairs if xi != tau]).mean()
    assert torch.allclose(mac_loss(features, 'mean'), distinct, atol=1e-5)
    model = tiny_ssanet()
    assert model.mac_reduction == 'paper'
    output = model.forward_train(torch.randn(3, 3, 96, 96))
    expected = model.mac_weight * mac_loss(output.extras['part_features'])
    assert torch.allclose(model.loss(output, torch.tensor([0, 1, 2]))['loss_mac'], expected)
    for reduction in ('paper', 'mean'):
        aligned = torch.stack([features[0], features[0] + 0.05 * torch.randn(parts, 8)])  # part j matches part j
        permuted = torch.stack([features[0], features[0][[1, 2, 3, 0]]])  # part j matches another part
        assert mac_loss(aligned, reduction) < mac_loss(permuted, reduction)
    assert mac_loss(features[:1], 'mean') == 0  # no pair of distinct samples in a batch of one
    with pytest.raises(ValueError, match='mac_reduction'):
        tiny_ssanet(mac_reduction='sum')


def test_ranking_loss_orders_navigator_scores_like_part_confidence():
    confidence = torch.tensor([[0.9, 0.1, 0.5]])
    ordered = torch.tensor([[5.0, 1.0, 3.0]], requires_grad=True)
    assert ranking_loss(ordered, confidence) == 0
    reversed_scores = torch.tensor([[1.0, 5.0, 3.0]], requires_grad=True)
    loss = ranking_loss(reversed_scores, confidence)
    loss.backward()
    assert loss > 0 and reversed_scores.grad[0, 0] < 0 < reversed_scores.grad[0, 1]  # raise part 0, lower part 1


def test_ranking_loss_is_nts_nets():
    """NTS-Net's `ranking_loss(score, targets)` (core/model.py), transcribed: targets are the part CE losses; hinge
    summed over the ordered pairs, divided by the batch size (not by the number of pairs)."""
    torch.manual_seed(0)
    scores, confidence = torch.randn(3, 6), torch.randn(3, 6)
    targets = -confidence  # NTS ranks by the part loss, -log p(true class)
    expected = torch.zeros(())
    for i in range(6):
        targets_p = (targets > targets[:, i].unsqueeze(1)).float()
        expected = expected + F.relu((1 - scores[:, i].unsqueeze(1) + scores) * targets_p).sum()
    assert torch.allclose(ranking_loss(scores, confidence), expected / 3, atol=1e-5)
    # a padded proposal (mask False) is never ranked
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[:, -1] = False
    assert ranking_loss(scores, confidence, mask) < ranking_loss(scores, confidence)
    assert torch.allclose(ranking_loss(scores, confidence, mask), ranking_loss(scores[:, :5], confidence[:, :5]))


def test_navigator_sees_a_detached_map_so_its_ranking_loss_never_moves_the_backbone():
    model = tiny_ssanet().train()
    torch.manual_seed(1)
    x, target = torch.randn(4, 3, 96, 96), torch.tensor([0, 1, 2, 3])
    model.loss(model.forward_train(x), target)['loss_rank'].backward()
    navigator = [p.grad for p in model.navigator.parameters()]
    assert all(g is not None for g in navigator) and sum(g.abs().sum() for g in navigator) > 0
    assert all(p.grad is None or not p.grad.any() for p in model.backbone.parameters())


def test_proposals_are_classified_and_the_top_k_are_the_parts():
    model = tiny_ssanet().eval()
    assert (model.num_proposals, model.num_parts) == (14, 4)  # 2 per anchor size; NTS-Net's CAT_NUM
    torch.manual_seed(2)
    x = torch.randn(2, 3, 96, 96)
    out = model.forward_train(x)
    assert out.logits['part'].shape == (2, 14, 5) and out.extras['part_mask'].shape == (2, 14)
    assert out.extras['part_features'].shape == (2, 4, model.backbone_features)
    assert_ranked(out.extras['proposal_scores'], out.extras['part_mask'])  # the parts are the best K proposals
    assert torch.equal(out.extras['part_boxes'], out.extras['proposal_boxes'][:, :4])
    # the part head classifies every proposal: its first K rows are the parts' own features
    assert torch.allclose(out.logits['part'][:, :4], model.heads['part'](out.extras['part_features']), atol=1e-5)
    nts = tiny_ssanet(proposal_selection='per_level', num_proposals=6).eval()  # NTS-Net's PROPOSAL_NUM
    assert nts.forward_train(x).logits['part'].shape == (2, 6, 5)
    literal = tiny_ssanet(proposal_selection='global', num_proposals=4).eval()  # Eq. 1: the CE over the K parts
    assert literal.forward_train(x).logits['part'].shape == (2, 4, 5)
    with pytest.raises(ValueError, match='num_proposals'):
        tiny_ssanet(proposal_selection='global', num_proposals=3)


def _train_navigator_to_prefer_large_boxes(selection, steps=30, planted='finest level', **kwargs):
    """Plant an init bias (NTS-Net's: the finest anchor level scores highest; or each level's smallest anchor
    size), then train the navigator alone with the ranking loss against a confidence that grows with box area:
    the side of the top part before and after."""
    model = tiny_ssanet(proposal_selection=selection, **kwargs).eval()
    with torch.no_grad():
        if planted == 'finest level':
            model.navigator.score[0].bias.add_(2.)  # the finest level wins every top-P slot at the start
        else:  # every level's smallest size (its first 3 score channels, one per ratio) wins its cells
            for score in model.navigator.score:
                score.bias[:3].add_(2.)
    torch.manual_seed(3)
    features = model.backbone.forward_features(torch.randn(4, 3, 96, 96)).detach()
    optimizer = torch.optim.SGD(model.navigator.parameters(), lr=0.05)
    sides = []
    for _ in range(steps):
        out = model.propose(features, (96, 96))
        boxes = out['proposal_boxes']
        area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
        sides.append(area[:, 0].sqrt().mean().item())  # part 1, the navigator's best
        loss = ranking_loss(out['proposal_scores'], area, out['proposal_mask'])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return sides[0], sides[-1]


def test_per_level_proposals_let_the_ranking_loss_find_the_informative_anchor_size():
    # NTS-Net's global NMS: the ranking loss only orders the proposals it is shown, all from the finest level
    finest, middle = (size * 2 ** (2 / 3) * 96 / 448 for size in (48, 96))  # each level's largest anchor at 96 px
    start, end = _train_navigator_to_prefer_large_boxes('global', num_proposals=6)
    assert start <= finest + 1e-3 and end <= finest + 1e-3
    # one NMS per level: every size is shown, and the coarsest level's anchors climb to the top
    start, end = _train_navigator_to_prefer_large_boxes('per_level', num_proposals=6)
    assert start <= finest + 1e-3 and end > middle + 1e-3
    model = tiny_ssanet(proposal_selection='per_level', num_proposals=6).eval()
    torch.manual_seed(1)
    out = model.forward_train(torch.randn(2, 3, 96, 96))
    assert_ranked(out.extras['proposal_scores'], out.extras['part_mask'])  # the parts are the best K proposals
    with pytest.raises(ValueError, match='proposal_selection'):
        tiny_ssanet(proposal_selection='level')


def test_per_size_proposals_let_the_ranking_loss_compare_the_sizes_of_one_cell():
    # sides at 96 px: the coarsest level's anchors are 41, 52 and 65 px, centred on the same cells
    smallest, largest = (192 * s * 96 / 448 for s in (1, 2 ** (2 / 3)))
    # one NMS per level: a cell's anchors overlap (IoU >= 0.4 > 0.25), so NMS shows the ranking loss one size per
    # cell, the one the navigator already prefers, and the planted smallest size stays on top
    start, end = _train_navigator_to_prefer_large_boxes('per_level', planted='smallest size', num_proposals=6)
    assert abs(start - smallest) < 1e-3 and abs(end - smallest) < 1e-3
    # one NMS per size: every size of a cell is shown, ranked, and the largest climbs to the top
    start, end = _train_navigator_to_prefer_large_boxes('per_size', planted='smallest size', num_proposals=7)
    assert abs(start - smallest) < 1e-3 and abs(end - largest) < 1e-3
    model = tiny_ssanet(proposal_selection='per_size', num_proposals=7).eval()
    torch.manual_seed(1)
    out = model.forward_train(torch.randn(2, 3, 96, 96))
    boxes = out.extras['proposal_boxes']
    sides = ((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])).sqrt()
    assert len(torch.unique(sides.round())) == 7  # one proposal of each of the 7 anchor sizes, ranked together
    assert_ranked(out.extras['proposal_scores'], out.extras['part_mask'])
    with pytest.raises(ValueError, match='num_proposals must be at least 7'):
        tiny_ssanet(num_proposals=6)  # 6 proposals cannot show 7 sizes


def test_parts_are_ranked_non_overlapping_and_batching_is_exact():
    model = tiny_ssanet().eval()
    torch.manual_seed(1)
    x = torch.randn(3, 3, 128, 128)
    _, details = model.attention_maps(x, return_details=True)
    scores, boxes = details['region_scores'], details['region_boxes']
    assert_ranked(scores, details['region_mask'])  # part j = rank j
    # one NMS per anchor size: proposals of one size never overlap (sides at 128 px: 17, 22, 35, 44, 55, 69, 87 px;
    # a size with too few anchors left after NMS pads its slots, masked)
    extras = model.forward_train(x).extras
    proposals, real = extras['proposal_boxes'], extras['part_mask']
    side = ((proposals[..., 2] - proposals[..., 0]) * (proposals[..., 3] - proposals[..., 1])).sqrt().round()
    same_size = (side[..., :, None] == side[..., None, :]).triu(1) & real[..., :, None] & real[..., None, :]
    assert same_size.any() and torch.all(box_iou(proposals, proposals)[same_size] <= model.nms_threshold + 1e-6)
    assert torch.equal(boxes, proposals[:, :model.num_parts])
    nts = tiny_ssanet(proposal_selection='global', num_proposals=6).eval()  # NTS-Net's one NMS: none overlap
    proposals = nts.attention_maps(x, return_details=True)[1]['proposal_boxes']
    assert torch.all(box_iou(proposals, proposals).triu(1) <= nts.nms_threshold + 1e-6)
    assert details['scale_candidates'].shape == (3, model.num_parts, model.num_scales, 4)
    # the middle candidate is the box itself, up to float rounding (x1 + 1.0 * (x2 - x1) need not be x2 exactly)
    assert torch.allclose(details['scale_candidates'][:, :, model.num_scales // 2], boxes, atol=1e-4)
    singles = torch.cat([model(x[i:i + 1]) for i in range(3)])
    assert torch.allclose(model(x), singles, atol=1e-4) and torch.allclose(model(x), model(x), atol=1e-6)
    out = model.forward_train(x)
    assert torch.allclose(out.logits['final'], out.logits['dsm'] + out.logits['op'])  # parts only: DSM + OP
    # inference crops the K parts, not the P classified proposals, and predicts as the training path does
    assert torch.allclose(model(x), out.logits['final'], atol=1e-4)
    batches = []
    hook = model.backbone.conv1.register_forward_hook(lambda module, args, output: batches.append(len(args[0])))
    model(x), model.forward_train(x)
    hook.remove()
    candidates = model.num_parts * (model.num_scales - 1)  # the middle candidate is the part's own crop
    assert batches == [3, 3 * (model.num_parts + candidates), 3, 3 * (model.num_proposals + candidates)]


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
    assert trainable() == {'backbone', 'navigator', 'part'}


def test_stage_three_keeps_dsm_and_op_losses_through_their_frozen_heads():
    """Stage 3 fine-tunes the part network with DSM and OP fixed: their heads do not train, but their losses still
    reach the backbone, so the features under the heads that make the final prediction stay fitted to them."""
    model = tiny_ssanet().train()
    part_net = model.training_stages()[2]
    assert {'loss_dsm', 'loss_op'} <= set(part_net.loss_terms)
    apply_stage(model, part_net)
    torch.manual_seed(3)
    x, target = torch.randn(4, 3, 96, 96), torch.tensor([0, 1, 2, 3])
    losses = model.loss(model.forward_train(x), target)
    sum(losses[t] for t in part_net.loss_terms).backward()
    assert all(p.grad is None for p in model.heads['dsm'].parameters())
    assert all(p.grad is None for p in model.heads['op'].parameters())
    model.zero_grad()
    losses = model.loss(model.forward_train(x), target)
    (losses['loss_dsm'] + losses['loss_op']).backward()  # the final prediction's losses alone move the backbone
    assert sum(p.grad.abs().sum() for p in model.backbone.parameters() if p.grad is not None) > 0


def test_fixed_parts_replace_the_navigator_with_the_same_boxes_for_every_image():
    """The attention-off ablation: every image's parts are the given boxes (fractions of the input), the navigator
    neither changes the prediction nor trains, and the other losses still reach the backbone."""
    layout = [[0, 0, 0.5, 0.75], [0.5, 0, 1, 0.75], [0, 0.25, 0.5, 1], [0.5, 0.25, 1, 1]]
    model = tiny_ssanet(fixed_parts=layout).train()
    torch.manual_seed(4)
    x, target = torch.randn(3, 3, 96, 96), torch.tensor([0, 1, 2])
    out = model.forward_train(x)
    expected = torch.tensor(layout) * torch.tensor([96., 96, 96, 96])
    assert torch.allclose(out.extras['part_boxes'], expected.expand(3, 4, 4))
    assert out.logits['part'].shape[1] == 4  # the part head classifies the K fixed parts only
    losses = model.loss(out, target)
    losses['loss'].backward()
    assert losses['loss_rank'] == 0 and all(p.grad is None for p in model.navigator.parameters())
    assert sum(p.grad.abs().sum() for p in model.backbone.parameters() if p.grad is not None) > 0
    model.eval()
    with torch.no_grad():
        before = model(x)
        for p in model.navigator.parameters():
            p.add_(torch.randn_like(p))
        assert torch.allclose(model(x), before, atol=1e-5)
    for bad in (layout[:3], [[0.5, 0, 0.4, 1]] * 4, [[0, 0, 1.5, 1]] * 4):
        with pytest.raises(ValueError, match='fixed_parts'):
            tiny_ssanet(fixed_parts=bad)


def test_heads_on_a_frozen_backbone_train_dsm_and_op_but_leave_the_backbone_to_the_part_losses():
    """Sec. 4.1's reading: the backbone is frozen while DSM and OP train, so their losses reach their heads only;
    the part CE still trains the backbone. By default the DSM loss trains the backbone too."""
    torch.manual_seed(3)
    x, target = torch.randn(4, 3, 96, 96), torch.tensor([0, 1, 2, 3])

    def grad_norms(model, term):
        model.zero_grad()
        model.loss(model.forward_train(x), target)[term].backward()
        return {name: sum(p.grad.abs().sum() for p in module.parameters() if p.grad is not None)
                for name, module in (('backbone', model.backbone), ('dsm', model.heads['dsm']),
                                     ('op', model.heads['op']))}

    frozen, default = tiny_ssanet(heads_on_frozen_backbone=True).train(), tiny_ssanet().train()
    for term, head in (('loss_dsm', 'dsm'), ('loss_op', 'op')):
        frozen_grads, default_grads = grad_norms(frozen, term), grad_norms(default, term)
        assert frozen_grads[head] > 0 and frozen_grads['backbone'] == 0
        assert default_grads['backbone'] > 0
    assert grad_norms(frozen, 'loss_part')['backbone'] > 0


def test_paper_variants_take_candidate_features_from_separate_crops_with_their_maps():
    model = timm.create_model('ssanet_resnet50', num_classes=3, backbone='test_resnet').eval()
    assert model.candidate_features == 'crops' and model.dsm_pool_size == 7  # Sec. 4.1, Fig. 3: 7 x 7 maps
    dim = model.backbone_features
    assert model.heads['dsm'].in_features == dim * 49
    torch.manual_seed(4)
    x = torch.randn(2, 3, 96, 96)
    with pytest.warns(UserWarning, match='dsm_pool_size=2'):  # test_resnet's 48 px crops give 2 x 2 maps, not 7 x 7
        out = model._forward_parts(x)
    candidates = out['candidates']
    assert out['candidate_features'].shape == (2, 4, 5, dim * 49)
    # each candidate is its own crop through the backbone, its h x w map flattened (written out, one crop at a time)
    for b, k, n in ((0, 0, 0), (1, 3, 4), (0, 2, 2)):
        crop = crop_regions(x[b:b + 1], candidates[b:b + 1, k:k + 1, n], model.part_size(96))[:, 0]
        cells = F.adaptive_avg_pool2d(model.backbone.forward_features(crop), 7).flatten()
        assert torch.allclose(out['candidate_features'][b, k, n], cells, atol=1e-4), (b, k, n)
    # the scales are seen apart: neighbouring candidates' features differ (pooled roi_align ones were ~0.995 alike)
    assert not torch.allclose(out['candidate_features'][:, :, 1], out['candidate_features'][:, :, 3], atol=1e-3)
    fast = timm.create_model('ssanet_resnet50', num_classes=3, backbone='test_resnet', candidate_features='roi_align',
                             dsm_pool_size=1).eval()
    assert fast._forward_parts(x)['candidate_features'].shape == (2, 4, 5, dim)


def test_short_stage_training_lowers_each_stages_losses(short_training):
    torch.manual_seed(0)  # the same initialisation whatever ran before in this worker
    model = tiny_ssanet(num_classes=4, candidate_features='roi_align')  # the fast candidates keep this test short
    dsm, op, _ = model.training_stages()
    apply_stage(model, dsm)
    losses = short_training(model, num_classes=4, image_size=96, lr=0.02, terms=dsm.loss_terms)
    # measured: part 0.70, DSM 0.53 of their first values after 30 steps (thread count moves these by a few points)
    for term, drop in (('loss_part', 0.8), ('loss_dsm', 0.65)):
        first, last = losses[term]
        assert last < drop * first, (term, first, last)
    apply_stage(model, op)  # then OP on the parts the first stage learned to find, all else fixed
    first, last = short_training(model, num_classes=4, image_size=96, lr=0.02, terms=op.loss_terms)['loss_op']
    assert last < 0.7 * first, (first, last)


def _dsm_losses(flat_head_lr, steps=8):
    """DSM cross-entropy over SGD steps (lr 0.05, stage 1) on one fixed batch of 4 x 4 candidate maps."""
    from timm_fgvc import parameter_groups
    torch.manual_seed(0)
    model = timm.create_model('ssanet_resnet50', num_classes=5, backbone='test_resnet', dsm_pool_size=4,
                              flat_head_lr=flat_head_lr)
    model.train()
    model.set_training_stage(model.training_stages()[0])
    x, y = torch.randn(8, 3, 128, 128), torch.arange(8) % 5
    opt = torch.optim.SGD(parameter_groups(model, 0.05, 0.05, 0.), momentum=0.9)
    losses = []
    for _ in range(steps):
        loss = model.loss(model.forward_train(x, y), y)['loss_dsm']
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_flattened_map_heads_learn_at_a_fan_in_scaled_lr_and_diverge_without_it():
    """DSM reads S x p^2 flattened cells: at the new-layer lr its logits jump (loss far above its start); at the
    lr divided by its cells the same steps lower it."""
    same, scaled = _dsm_losses('same'), _dsm_losses('fan_in')
    assert max(same) > 3 * same[0]
    assert max(scaled) < 1.5 * scaled[0] and min(scaled[-3:]) < scaled[0]


def test_aligned_op_input_pools_the_candidate_that_dsm_reads_as_the_parts_own_scale():
    """`op_input='aligned'` (Sec. 3 and 3.4: "the proposals with the aligned scale are further input the OP
    module"): per part, OP pools the candidate that Eq. 7's best shift, for the class DSM predicts, puts in the middle
    filter slot. Checked against that definition, shift by shift; the default pools the part itself."""
    from timm_fgvc.layers import oriented_pooling
    torch.manual_seed(0)
    model = timm.create_model('ssanet_tiny', num_classes=4, op_input='aligned').eval()
    head, scales, middle = model.heads['dsm'], model.num_scales, model.num_scales // 2
    with torch.no_grad():
        head.weight.normal_()  # a trained-looking bank: shifts other than 0 win
        x = torch.randn(3, 3, 96, 96)
        out = model._forward_parts(x)
        _, _, candidate_maps = model._zoomed_feature_maps(x, out['proposal_boxes'][:, :model.num_parts],
                                                          out['candidates'])
        features = out['candidate_features']
        predicted = model.heads['dsm'](features).argmax(-1)
        chosen = []
        for b in range(3):
            for i in range(model.num_parts):
                c = int(predicted[b])
                responses = [sum(head.weight[i, c, n] @ features[b, i, (n + r) % scales] for n in range(scales))
                             for r in range(scales)]
                chosen.append((middle + int(torch.stack(responses).argmax())) % scales)
        maps = torch.stack([candidate_maps[k // model.num_parts, k % model.num_parts, j] for k, j in enumerate(chosen)])
        maps = torch.nn.functional.interpolate(maps, size=(7, 7), mode='bilinear', align_corners=False)
        expected = oriented_pooling(maps, 3, 3).view(3, model.num_parts, 4, -1)
    assert set(chosen) != {middle}  # some part is read at another candidate than itself
    torch.testing.assert_close(out['oriented'], expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="needs candidate_features='crops'"):
        timm.create_model('ssanet_tiny', num_classes=4, op_input='aligned', candidate_features='roi_align')


def test_navigator_scores_anchors_in_float32_under_autocast_and_with_half_weights():
    """bf16 anchor scores tie and reorder (NMS and the ranking then pick other parts): under autocast, and with the
    model cast to bf16, the navigator scores as float32 does from the same feature map and weights."""
    torch.manual_seed(0)
    navigator = Navigator(32, [6, 6, 9]).eval()
    feature_map = torch.randn(2, 32, 8, 8).bfloat16().float()  # values a bf16 backbone can give
    with torch.no_grad():
        reference = navigator(feature_map)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            autocast = navigator(feature_map)
        rounded = copy.deepcopy(navigator).bfloat16().float()  # the bf16 model's weights, in float32
        expected_half = rounded(feature_map)
        half = navigator.bfloat16()(feature_map.bfloat16())
    for got, want in ((autocast, reference), (half, expected_half)):
        for level, expected in zip(got, want):
            assert level.dtype == torch.float32 and torch.allclose(level, expected, atol=1e-5, rtol=1e-5)
    assert len(torch.cat([s.flatten() for s in half]).unique()) == sum(s.numel() for s in half)  # no ties
