"""Shared FGVC building blocks: one concept per file, reused across methods."""
from .maps import gaussian_smooth, maps_in_image, min_max_normalize
from .class_response import (class_activation_map, class_response_maps, entropy_gated_response, max_class_response,
                             predicted_class_map)
from .peaks import Peaks, find_peaks, local_maxima, peaks_to_image_coords, peaks_to_normalized_coords
from .saliency_sampler import SaliencySampler, gaussian_kernel_1d
from .otsu import otsu_mask, otsu_threshold
from .regions import (Regions, anchor_boxes, box_iou, crop_regions, mask_bounding_box, nms_top_k,
                      propose_square_regions, scale_candidates)
from .alignment import circulant_alignment, circulant_shifts, oriented_pooling
