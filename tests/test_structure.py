"""Module layering: the reporting modules import one way (hub -> cards -> benchmarks -> catalog), no circle."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / 'timm_fgvc'
LAYERS = ['catalog', 'runs', 'benchmarks', 'cards', 'hub']  # each may import only those before it


def package_imports(module: str) -> set:
    """The timm_fgvc top-level modules a module imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse((PACKAGE / f'{module}.py').read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            found.add(node.module.split('.')[0])
        elif isinstance(node, ast.ImportFrom) and node.level == 1:
            found.update(alias.name for alias in node.names)
    return found


def test_reporting_modules_import_one_way():
    for i, module in enumerate(LAYERS):
        above = set(LAYERS[i:])
        assert not package_imports(module) & above, (module, package_imports(module) & above)


def test_method_catalogue_has_one_home():
    from timm_fgvc import benchmarks, cards, catalog, hub
    assert benchmarks.METHODS is catalog.METHODS and cards.METHODS is catalog.METHODS and hub.METHODS is catalog.METHODS
    assert "METHODS: Dict" not in (PACKAGE / 'cards.py').read_text()
    # the benches keep only what the catalogue does not hold (the papers' backbone and resolution)
    bench = (PACKAGE.parent / 'bench' / '_common.py').read_text()
    assert 'PAPER_SETUP' in bench and not any(repr(name) in bench for name in catalog.METHODS.values())
