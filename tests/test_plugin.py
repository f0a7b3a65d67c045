"""A method from outside the package: a plugin registers its models with timm and its prefix with
`timm_fgvc.register_method`, and the engine, cards and export treat it as one of the five (run in a subprocess, so
its registration does not reach the other tests)."""
import json
import subprocess
import sys
import textwrap

import pytest

from timm_fgvc.catalog import register_method

PLUGIN = textwrap.dedent('''
    """A plugin method: S3N's model under another name, registered from outside timm_fgvc."""
    from timm.models import generate_default_cfgs, register_model
    import timm_fgvc
    from timm_fgvc.models import build_fgvc_model, fgvc_cfg
    from timm_fgvc.models.s3n import S3N

    timm_fgvc.register_method('twoview', 'TwoView')
    default_cfgs = generate_default_cfgs({'twoview_tiny': fgvc_cfg(
        input_size=64, crop_pct=1.0, num_classes=10, classifier=('heads.joint',), paper_name='A plugin',
        paper_ids='none')})

    @register_model
    def twoview_tiny(pretrained=False, **kwargs):
        return build_fgvc_model(S3N, 'twoview_tiny', pretrained, **dict(dict(backbone='test_resnet'), **kwargs))
''')

SCRIPT = textwrap.dedent('''
    import json, sys
    import twoview_plugin  # noqa: F401
    from timm_fgvc.engine.config import parse_args
    from timm_fgvc.engine.trainer import is_fgvc_model, train
    from timm_fgvc.hub import export_run
    run, out = sys.argv[1], sys.argv[2]
    results = train(parse_args(['--model', 'twoview_tiny', '--output-stride', '16', '--max-steps', '2',
                                '--epochs', '1', '--synthetic-classes', '3', '--synthetic-train-per-class', '2',
                                '--synthetic-test-per-class', '1', '--batch-size', '6', '--output-dir', run]))
    export_run(run, out)
    print(json.dumps(dict(fgvc=is_fgvc_model('twoview_tiny'), model_args=results['model_args'])))
''')


def test_a_plugin_method_is_trained_and_published_as_a_method(tmp_path):
    (tmp_path / 'twoview_plugin.py').write_text(PLUGIN)
    done = subprocess.run([sys.executable, '-c', SCRIPT, str(tmp_path / 'run'), str(tmp_path / 'export')],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={'PYTHONPATH': str(tmp_path), 'PATH': '', 'HOME': str(tmp_path),
                               'OMP_NUM_THREADS': '1'})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report['fgvc']
    # --output-stride reached its backbone (a plain model would get it as a model argument)
    assert report['model_args']['backbone_args'] == {'output_stride': 16}
    card = (tmp_path / 'export' / 'README.md').read_text()
    assert 'TwoView (A plugin) with a `test_resnet` backbone' in card and 'a baseline without' not in card
    assert 'import twoview_plugin  # registers the twoview_tiny architecture' in card  # not timm_fgvc, which does not


@pytest.mark.parametrize('prefix, name, match', [('two_view', 'TwoView', 'without "_"'),
                                                 ('s3n', 'Another', "already 'S3N'"),
                                                 ('vit', 'MyViT', "names timm models \\(vit_")])
def test_a_method_prefix_that_cannot_name_models_is_refused(prefix, name, match):
    with pytest.raises(ValueError, match=match):
        register_method(prefix, name)
