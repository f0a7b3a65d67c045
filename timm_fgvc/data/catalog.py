"""Fine-grained datasets the model tags refer to (SPEC §3): tag -> classes and where to get them."""
from dataclasses import dataclass
from typing import Dict, Optional

__all__ = ['DatasetInfo', 'DATASETS']


@dataclass(frozen=True)
class DatasetInfo:
    tag: str
    title: str
    num_classes: int
    hub_id: Optional[str]  # a `datasets` id on the Hugging Face Hub
    license: str = 'other'


DATASETS: Dict[str, DatasetInfo] = {info.tag: info for info in (
    DatasetInfo('cub200', 'CUB-200-2011', 200, 'bentrevett/caltech-ucsd-birds-200-2011'),
    DatasetInfo('aircraft', 'FGVC-Aircraft', 100, 'HuggingFaceM4/FGVC-Aircraft'),
    DatasetInfo('cars', 'Stanford Cars', 196, 'tanganke/stanford_cars'),
    DatasetInfo('flowers102', 'Oxford Flowers-102', 102, 'nelorth/oxford-flowers'),
    DatasetInfo('synthetic', 'timm-fgvc synthetic parts', 10, None, license='apache-2.0'),
)}
