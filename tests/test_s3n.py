"""S3N: partition (Eq. 4), sparse attention (Eq. 5), sampling maps (Eq. 6), the batched forward, learning."""

import timm
import torch

import timm_fgvc  # noqa: F401
from timm_fgvc.models.s3n import sampling_map, selective_partition, sparse_attention, sparse_attention_factors

TINY = dict(backbone='test_resnet')


def tiny_s3n(num_classes=5, **kwargs):
    torch.manual_seed(0)
    return timm.create_model('s3n_resnet18', num_classes=num_classes, **TINY, **kwargs)


def peaks_dict(centers, scores, mask):
    return dict(peak_centers=torch.tensor(centers, dtype=torch.float32),
                peak_scores=torch.tensor(scores, dtype=torch.float32), peak_mask=torch.tensor(mask))


def test_partition_is_probabilistic_in_training_and_deterministic_in_eval():
    torch.manual_seed(0)
    scores = torch.tensor([[0.9, 0.5, 0.2, 0.0]]).expand(20000, 4)
    valid = torch.tensor([[True, True, True, False]]).expand(20000, 4)
    disc, comp = selective_partition(scores, valid, training=True)
    rate = disc.float().mean(0)
    assert torch.allclose(rate[:3], torch.tensor([0.9, 0.5, 0.2]), atol=0.02)  # P(T_d) = R (Eq. 4)
    assert not (disc & comp).any() and not disc[:, 3].any() and not comp[:, 3].any()
    assert torch.equal(disc | comp, valid)
    disc_eval, comp_eval = selective_partition(scores[:1], valid[:1], training=False)
    assert disc_eval.tolist() == [[True, True, False, False]]
    assert comp_eval.tolist() == [[False, False, True, False]]
    both, _ = selective_partition(scores[:1], valid[:1], training=True, mode='all')
    assert torch.equal(both, valid[:1])


def test_sparse_attention_matches_eq5():
    centers = torch.tensor([[[0.25, 0.5], [0.75, 0.25]]])
    scores = torch.tensor([[0.8, 0.4]])
    disc, comp = torch.tensor([[True, False]]), torch.tensor([[False, True]])
    beta1, beta2 = torch.tensor(0.1), torch.tensor(0.3)
    size = 40
    att = sparse_attention(centers, scores, disc, comp, beta1, beta2, (size, size))
    xs = (torch.arange(size) + 0.5) / size
    for k, (beta, amp) in enumerate(((0.1, 0.8), (0.3, 1 / 0.4))):
        cx, cy = centers[0, k]
        d2 = (xs[None, :] - cx) ** 2 + (xs[:, None] - cy) ** 2
        expected = amp * torch.exp(-d2 / (scores[0, k] * beta ** 2))
        assert torch.allclose(att[0, k], expected, atol=1e-5)
    # a discriminative peak is narrower (beta1 < beta2) and its amplitude grows with R, a complementary one's shrinks
    unused = sparse_attention(centers, scores, disc & False, comp & False, beta1, beta2, (size, size))
    assert unused.abs().max() == 0


def test_a_peak_in_both_sets_enters_each_sampling_map_in_that_sets_form_of_eq5():
    """Table 4's 'All', the authors' warm-up and one peak under 'extremes' put a peak in T_d and T_c: Q^d gets
    R e^(-d^2 / R beta1^2), Q^c (1 / R) e^(-d^2 / R beta2^2) (Eq. 5), so the two resampled images differ."""
    model = timm.create_model('s3n_tiny', num_classes=4, partition='all').train()
    peaks = dict(peak_centers=torch.tensor([[[0.3, 0.6]]]), peak_scores=torch.tensor([[0.5]]),
                 peak_mask=torch.tensor([[True]]))
    size = 20
    maps = model.sampling_maps(peaks, (size, size), return_attention=False)
    assert maps['discriminative'].all() and maps['complementary'].all()
    xs = (torch.arange(size) + 0.5) / size
    d2 = (xs[None, :] - 0.3) ** 2 + (xs[:, None] - 0.6) ** 2
    for key, amplitude, beta in (('q_discriminative', 0.5, model.beta1), ('q_complementary', 2.0, model.beta2)):
        expected = model.base_level + amplitude * torch.exp(-d2 / (0.5 * beta.detach() ** 2))
        assert torch.allclose(maps[key][0], expected, atol=1e-5), key


def test_sampling_maps_sum_the_member_attention_eq6():
    """Eq. 6 from the separable factors (one matmul) equals base + the sum of the members' Eq. 5 maps."""
    torch.manual_seed(0)
    centers, scores = torch.rand(3, 5, 2), torch.rand(3, 5) * 0.9 + 0.1
    disc = torch.rand(3, 5) > 0.5
    valid = torch.rand(3, 5) > 0.2
    disc, comp = disc & valid, ~disc & valid
    beta1, beta2 = torch.tensor(0.11), torch.tensor(0.28)
    attention = sparse_attention(centers, scores, disc, comp, beta1, beta2, (31, 23))
    factors = sparse_attention_factors(centers, scores, disc, comp, beta1, beta2, (31, 23))
    for members in (disc, comp):
        expected = 0.09 + (attention * members[..., None, None]).sum(1)
        assert torch.allclose(sampling_map(*factors, members, 0.09), expected, atol=1e-5)
    assert torch.allclose(sampling_map(*factors, torch.zeros_like(disc), 0.09), torch.full((3, 31, 23), 0.09))


def test_empty_peak_set_gives_identity_resampling_and_peak_magnifies():
    model = tiny_s3n().eval()
    image = torch.zeros(2, 3, 64, 64)
    image[:, :, 12:20, 40:48] = 1.0  # a square around (x, y) = (0.69, 0.25)
    peaks = peaks_dict([[[0.69, 0.25]], [[0.69, 0.25]]], [[0.9], [0.9]], [[False], [True]])
    maps = model.sampling_maps(peaks, (model.grid_size, model.grid_size))
    assert torch.allclose(maps['q_discriminative'][0], torch.full((31, 31), model.base_level))
    resampled, _ = model.sampler(image, maps['q_discriminative'])
    assert (resampled[0] - image[0]).abs().max() < 1e-3  # no peak: the identity (interpolation error)
    square_in, square_out = (image[1, 0] > 0.5).sum(), (resampled[1, 0] > 0.5).sum()
    assert square_out > 1.5 * square_in  # the attended part covers more output pixels than input pixels


def test_forward_is_batched_with_different_peak_counts():
    model = tiny_s3n().eval()
    torch.manual_seed(1)
    x = torch.randn(4, 3, 64, 64)
    x[1] = 0.0  # a constant image: constant response, no peak above the mean after min-max
    out = model.forward_train(x)
    counts = out.extras['peak_mask'].sum(1)
    assert counts[1] == 0 and len(set(counts.tolist())) > 1
    # an image with no peak is resampled to itself in both branches
    assert (out.extras["image_discriminative"][1] - x[1]).abs().max() < 1e-3
    # batching does not change any image's result (no cross-image state, masks not shapes)
    singles = torch.cat([model(x[i:i + 1]) for i in range(4)])
    assert torch.allclose(model(x), singles, atol=1e-4)
    assert torch.equal(model(x), model(x))  # eval is deterministic
    assert out.attention.shape == (4, model.max_peaks, 64, 64)
    assert out.attention.max() <= 1 + 1e-6 and out.attention.min() >= 0


def test_attention_maps_peak_where_the_peaks_are():
    model = tiny_s3n().eval()
    x = torch.randn(2, 3, 96, 96)
    maps, details = model.attention_maps(x, return_details=True)
    assert maps.shape[-2:] == (96, 96)
    mask = details['peak_mask']
    assert mask.any()
    for b, k in mask.nonzero().tolist():
        row, col = divmod(maps[b, k].argmax().item(), 96)
        px, py = details['peak_xy'][b, k].tolist()
        assert abs(col + 0.5 - px) <= 1.0 and abs(row + 0.5 - py) <= 1.0


def test_short_training_lowers_all_four_losses_and_learns_beta(short_training):
    model = tiny_s3n(num_classes=4)
    beta_start = (model.beta1.item(), model.beta2.item())
    losses = short_training(model, num_classes=4, image_size=64, lr=0.05)
    for term in ('loss_original', 'loss_discriminative', 'loss_complementary', 'loss_joint'):
        first, last = losses[term]
        assert last < 0.7 * first, (term, first, last)
    assert (model.beta1.item(), model.beta2.item()) != beta_start  # beta learns through the sampler (Sec. 3.3)


# --- issue 9: beta's optimiser group, float32 peaks, the authors' recipe ------------------------------------------
def test_beta_has_its_own_small_lr_group_without_weight_decay_and_is_logged():
    """In the new-layer group (lr 1e-2, weight decay) one SGD step moved beta1 by ~60% of its value; in its own
    group (2e-5 x the new-layer lr, no decay: the authors' 1e-4 x base lr for r = beta / sqrt(2)) it barely moves."""
    from timm_fgvc import parameter_groups
    model = tiny_s3n(num_classes=4)
    groups = parameter_groups(model, lr=1e-2, backbone_lr=1e-3, weight_decay=1e-4)
    beta_groups = [g for g in groups if any(p is model.beta1 for p in g['params'])]
    assert len(beta_groups) == 1 and beta_groups[0]['name'] != 'new'
    assert any(p is model.beta2 for p in beta_groups[0]['params']) and len(beta_groups[0]['params']) == 2
    assert beta_groups[0]['weight_decay'] == 0 and abs(beta_groups[0]['lr'] - 2e-7) < 1e-12
    assert {'beta1', 'beta2'} <= model.no_weight_decay()
    optimizer = torch.optim.SGD([g for g in groups if g['params']], lr=1e-2, momentum=0.9)
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    model.train()
    start = model.beta1.item()
    output = model.forward_train(x, y)
    losses = model.loss(output, y)
    losses['loss'].backward()
    assert model.beta1.grad is not None and model.beta1.grad.abs() > 0
    optimizer.step()
    assert abs(model.beta1.item() - start) < 1e-3 * start
    # logged, not trained on: the loss dict and extras carry the current values; 'loss' is the four CE terms only
    assert losses['beta1'].item() == start and not losses['beta1'].requires_grad
    assert output.extras['beta2'].item() == model.beta2.item()
    terms = sum(v for k, v in losses.items() if k.startswith('loss_'))
    assert torch.allclose(losses['loss'], terms)


def test_peaks_are_found_in_float32_under_bf16_autocast():
    """Under autocast the response map used to be a bf16 einsum (ties between neighbouring cells, adjacent
    duplicate peaks); it is computed in float32 from the same features."""
    model = tiny_s3n().eval()
    torch.manual_seed(0)
    features = torch.randn(3, model.backbone_features, 7, 7)
    logits = model.heads['original'](features.mean((2, 3)))
    reference = model.select_peaks(features, logits)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        mixed = model.select_peaks(features, logits)
    assert mixed['response'].dtype == torch.float32
    torch.testing.assert_close(mixed['response'], reference['response'], atol=1e-6, rtol=1e-6)
    assert torch.equal(mixed['peak_mask'], reference['peak_mask'])
    torch.testing.assert_close(mixed['peak_centers'], reference['peak_centers'])


def test_extremes_eval_rule_puts_the_max_peak_in_d_and_the_min_peak_in_c():
    scores = torch.tensor([[0.9, 0.6, 0.3, 0.0], [0.7, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    valid = torch.tensor([[True, True, True, False], [True, False, False, False], [False] * 4])
    disc, comp = selective_partition(scores, valid, training=False, eval_rule='extremes')
    assert disc.tolist() == [[True, False, False, False], [True, False, False, False], [False] * 4]
    assert comp.tolist() == [[False, False, True, False], [True, False, False, False], [False] * 4]
    # training is Eq. 4 whatever the eval rule
    torch.manual_seed(0)
    disc, comp = selective_partition(scores[:1].expand(4000, 4), valid[:1].expand(4000, 4), training=True,
                                     eval_rule='extremes')
    assert torch.allclose(disc.float().mean(0)[:3], scores[0, :3], atol=0.03)


def test_authors_recipe_warms_up_with_all_peaks_then_partitions():
    from timm_fgvc.engine.trainer import apply_stage
    model = timm.create_model('s3n_resnet50_authors', num_classes=5, **TINY)
    assert model.recipe == 'authors' and model.eval_rule == 'extremes'
    stages = model.training_stages()
    assert [(s.name, s.epochs) for s in stages] == [('warmup_all_peaks', 20), ('main', 40)]
    assert [s.name for s in tiny_s3n().training_stages()] == ['main']  # the paper: one stage
    torch.manual_seed(0)
    peaks = model.select_peaks(*_features_and_logits(model, batch=8))
    assert (peaks['peak_mask'].sum(1) > 1).any()
    model.train()
    apply_stage(model, stages[0])
    maps = model.sampling_maps(peaks, (31, 31), return_attention=False)
    assert torch.equal(maps['discriminative'], peaks['peak_mask'])
    assert torch.equal(maps['complementary'], peaks['peak_mask'])  # "All": every peak feeds both maps
    apply_stage(model, stages[1])
    maps = model.sampling_maps(peaks, (31, 31), return_attention=False)
    assert not (maps['discriminative'] & maps['complementary']).any()  # Eq. 4: disjoint sets
    assert torch.equal(maps['discriminative'] | maps['complementary'], peaks['peak_mask'])
    apply_stage(model, stages[0])
    model.eval()  # evaluation during the warm-up uses the eval rule, not "All"
    maps = model.sampling_maps(peaks, (31, 31), return_attention=False)
    assert maps['discriminative'].sum(1).tolist() == (peaks['peak_mask'].sum(1) > 0).long().tolist()


def _features_and_logits(model, batch):
    features = torch.randn(batch, model.backbone_features, 7, 7)
    return features, model.heads['original'](features.mean((2, 3)))


def test_authors_recipe_smooths_o_and_c_labels_and_buffers_the_branches():
    import torch.nn.functional as F
    from timm_fgvc import parameter_groups
    model = timm.create_model('s3n_resnet50_authors', num_classes=5, **TINY).eval()
    epsilon = 0.15 * 5 / 4  # 0.85 on the true class, 0.15 spread over the 4 others (multi_smooth_loss)
    assert set(model.label_smoothing) == {'original', 'complementary'}
    assert all(abs(v - epsilon) < 1e-12 for v in model.label_smoothing.values())
    torch.manual_seed(0)
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([1, 3])
    output = model.forward_train(x, y)
    losses = model.loss(output, y)
    target = torch.full((2, 5), 0.15 / 4).scatter(1, y[:, None], 0.85)
    for head, smoothed in (('original', True), ('complementary', True), ('discriminative', False), ('joint', False)):
        logp = output.logits[head].float().log_softmax(-1)
        expected = -(target * logp).sum(1).mean() if smoothed else F.cross_entropy(output.logits[head], y)
        torch.testing.assert_close(losses[f'loss_{head}'], expected)
    model.reset_classifier(11)
    assert abs(model.label_smoothing['original'] - 0.15 * 11 / 10) < 1e-12
    # conv3x3 (stride 2) + BN + ReLU before the D and C heads, at the backbone's lr (the authors' groups)
    assert set(model.branch_buffers) == {'discriminative', 'complementary'}
    assert model.branch_buffers['discriminative'][0].stride == (2, 2)
    groups = {g['name']: g for g in parameter_groups(model, lr=1e-2, backbone_lr=1e-3, weight_decay=1e-4)}
    assert abs(groups['new:branch_buffers.']['lr'] - 1e-3) < 1e-12
    assert groups['new:branch_buffers.']['weight_decay'] == 1e-4
    assert tiny_s3n().branch_buffers is None and tiny_s3n().label_smoothing == {}
    # F_J is pooled (the buffered maps are half O's size) and forward = forward_head(forward_features)
    model.reset_classifier(5)
    model.eval()
    features = model.forward_features(x)
    assert features.shape == (2, 3 * model.backbone_features, 1, 1)
    torch.testing.assert_close(model(x), model.forward_head(features))
    # each piece is its own argument too: the paper recipe with just the buffer
    only_buffer = tiny_s3n(branch_buffer=True)
    assert only_buffer.branch_buffers is not None and only_buffer.eval_rule == 'threshold'


def test_eval_forward_exports_with_torch_export_and_matches_eager():
    """Peak de-duplication must not branch on tensor values in traced code (torch.export / torch.compile)."""
    model = timm.create_model('s3n_tiny', num_classes=5).eval()
    x = torch.randn(2, 3, 96, 96)
    exported = torch.export.export(model, (x,))
    assert torch.allclose(exported.module()(x), model(x), atol=1e-5)


def test_separate_resampled_passes_give_each_branch_its_own_batchnorm_statistics():
    """The authors' code runs D and C through the backbone in two calls: in training each resampled batch is then
    normalised by its own BatchNorm statistics (stacked, by statistics of both); in evaluation the two agree."""
    torch.manual_seed(2)
    x = torch.randn(4, 3, 64, 64)
    stacked = tiny_s3n()
    separate = tiny_s3n(separate_resampled_passes=True)
    separate.load_state_dict(stacked.state_dict())
    for model, own_statistics in ((separate, True), (stacked, False)):
        model.train()
        out = model._forward_branches(x)
        with torch.no_grad():
            alone = model.backbone.forward_features(out['image_discriminative'])
        close = torch.allclose(out['feat_discriminative'], alone, atol=1e-4)
        assert close == own_statistics, model.separate_resampled_passes
    stacked.eval(), separate.eval()
    stacked.load_state_dict(separate.state_dict())  # the same running statistics after the training passes
    assert torch.allclose(stacked(x), separate(x), atol=1e-4)


def test_peaks_on_maps_resized_to_the_sampling_grid_sit_where_the_authors_code_puts_them():
    """`peak_map_size=31`: the class response maps are resized (aligned corners) before the peak search. An interior
    peak stays within one 31-grid cell of its feature-map cell; a peak on the border cell moves to the edge."""
    model = tiny_s3n(num_classes=3).eval()
    channels = model.backbone_features
    with torch.no_grad():
        model.heads['original'].weight.zero_()
        model.heads['original'].weight[0, 0] = 1.
    feature_map = torch.zeros(1, channels, 8, 8)
    feature_map[0, 0, 0, 0] = 1.  # border cell (row 0, column 0)
    feature_map[0, 0, 5, 2] = 0.9  # interior cell (row 5, column 2)
    logits = torch.tensor([[10., 0., 0.]])  # confident: the gate takes the top-1 map
    native = model.select_peaks(feature_map, logits)
    model.peak_map_size = 31
    resized = model.select_peaks(feature_map, logits)
    assert resized['response'].shape[-2:] == (31, 31)

    def centres(peaks):
        return sorted(map(tuple, peaks['peak_centers'][0][peaks['peak_mask'][0]].tolist()))

    (nx0, ny0), (nx1, ny1) = centres(native)
    (rx0, ry0), (rx1, ry1) = centres(resized)
    assert abs(nx0 - 1 / 16) < 1e-6 and abs(ny0 - 1 / 16) < 1e-6  # the corner cell's centre
    assert rx0 < 1 / 31 and ry0 < 1 / 31  # the edge of the image
    assert abs(rx1 - nx1) < 1 / 31 and abs(ry1 - ny1) < 1 / 31 and abs(nx1 - 2.5 / 8) < 1e-6
