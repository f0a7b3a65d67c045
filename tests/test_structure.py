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


# the package's units bottom-up: a unit imports only units of lower tiers (layers -> models -> engine -> cli)
TIERS = [{'layers', 'catalog'}, {'models', 'optim', 'data'}, {'engine'}, {'runs', 'benchmarks'},
         {'inference', 'cards'}, {'hub', 'predict'}, {'evaluate', 'explain'}, {'cli'}]


def unit_imports() -> dict:
    """unit (a top-level module or subpackage of timm_fgvc) -> the other units its files import."""
    import importlib.util
    imports = {}
    for path in PACKAGE.rglob('*.py'):
        parts = path.relative_to(PACKAGE).with_suffix('').parts
        if parts == ('__init__',):
            continue
        package = '.'.join(('timm_fgvc',) + parts[:-1])
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = importlib.util.resolve_name('.' * node.level + (node.module or ''), package)
                names = [base] if node.module else [f'{base}.{a.name}' for a in node.names]
            elif isinstance(node, ast.ImportFrom) and (node.module or '').startswith('timm_fgvc.'):
                names = [node.module]
            else:
                continue
            imports.setdefault(parts[0], set()).update(n.split('.')[1] for n in names if n.count('.') >= 1)
    return {unit: found - {unit} for unit, found in imports.items()}


def test_package_units_import_only_lower_tiers():
    tier = {unit: i for i, units in enumerate(TIERS) for unit in units}
    imports = unit_imports()
    assert set(imports) <= set(tier), set(imports) - set(tier)  # a new unit takes its place in TIERS
    upward = {(unit, other) for unit, found in imports.items() for other in found if tier[other] >= tier[unit]}
    assert not upward, upward
