"""The few-shot sampler (`--shots k`, HSM's protocol): k training images per class drawn with the seed, from the
training rows only."""
import random

import datasets
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from timm_fgvc.data.loading import few_shot_indices, load_fgvc_dataset


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(sizes=st.lists(st.integers(1, 12), min_size=2, max_size=6), shots=st.integers(1, 4), seed=st.integers(0, 999),
       order_seed=st.integers(0, 999))
def test_exactly_k_distinct_images_of_each_class_and_the_same_draw_for_the_same_seed(sizes, shots, seed, order_seed):
    labels = [c for c, n in enumerate(sizes) for _ in range(n)]
    random.Random(order_seed).shuffle(labels)  # classes interleaved, as in a real split
    if min(sizes) < shots:
        with pytest.raises(ValueError, match='fewer than --shots'):
            few_shot_indices(labels, shots, seed)
        return
    chosen = few_shot_indices(labels, shots, seed)
    assert chosen == sorted(set(chosen)) and all(0 <= i < len(labels) for i in chosen)
    assert [sum(labels[i] == c for i in chosen) for c in range(len(sizes))] == [shots] * len(sizes)
    assert few_shot_indices(labels, shots, seed) == chosen


def test_a_different_seed_draws_a_different_subset():
    labels = [c for c in range(4) for _ in range(10)]  # C(10, 2)^4 possible 2-shot subsets
    draws = {seed: tuple(few_shot_indices(labels, 2, seed)) for seed in range(6)}
    assert len(set(draws.values())) == len(draws)


def _image_folder(root, classes=3, per_class=8):
    """<root>/<class>/<i>.png, every image a distinct colour (its identity)."""
    from PIL import Image
    for c in range(classes):
        (root / f'class_{c}').mkdir(parents=True)
        for i in range(per_class):
            Image.new('RGB', (12, 10), (30 * c, 20 * i, 7 * (c + i))).save(root / f'class_{c}' / f'{i}.png')


def _paths(split):
    return [row['path'] for row in split.cast_column('image', datasets.Image(decode=False))['image']]


def test_few_shot_train_set_holds_no_eval_image_and_follows_the_seed(tmp_path):
    _image_folder(tmp_path / 'flat')  # no split folders: the eval images are held out here, then k are drawn
    source = str(tmp_path / 'flat')
    full = load_fgvc_dataset(source, eval_fraction=0.25, seed=3, check_images=False)
    few = load_fgvc_dataset(source, eval_fraction=0.25, shots=2, seed=3, check_images=False)
    again = load_fgvc_dataset(source, eval_fraction=0.25, shots=2, seed=3, check_images=False)
    train, evaluation = _paths(few.train), _paths(few.eval)
    assert sorted(few.train['label']) == [0, 0, 1, 1, 2, 2]
    assert not set(train) & set(evaluation)  # no eval image in train
    assert set(train) <= set(_paths(full.train))  # drawn from the training rows of the same hold-out
    assert _paths(few.eval) == _paths(full.eval) and len(evaluation) == 6  # the eval set is untouched
    assert _paths(again.train) == train  # same seed, same subset
    # a different seed: still disjoint from its own eval set, and a different draw
    other = load_fgvc_dataset(source, eval_fraction=0.25, shots=2, seed=4, check_images=False)
    assert not set(_paths(other.train)) & set(_paths(other.eval))
    assert sorted(other.train['label']) == [0, 0, 1, 1, 2, 2]
    assert _paths(other.train) != train


def test_few_shot_draws_from_the_train_split_of_a_split_folder(tmp_path):
    _image_folder(tmp_path / 'split' / 'train')
    _image_folder(tmp_path / 'split' / 'test', per_class=3)
    few = load_fgvc_dataset(str(tmp_path / 'split'), shots=3, seed=0, check_images=False)
    train = _paths(few.train)
    assert all('/train/' in path for path in train) and all('/test/' in path for path in _paths(few.eval))
    assert sorted(few.train['label']) == [0, 0, 0, 1, 1, 1, 2, 2, 2] and len(few.eval) == 9
