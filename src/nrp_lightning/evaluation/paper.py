"""The paper's own numbers, to print beside ours: Table 1 of Naseer et al. (CVPR 2020), attack
success rate (%) on IncRes-v2ens behind JPEG and NRP, eps <= 16, ImageNet-NeurIPS (the NeurIPS-2017
dev set). Other models than ours (Inception sources and victim, the authors' purifier trained on
COCO on a GPU), so a row is a scale to read ours against, not a comparison of like with like."""
from __future__ import annotations

TABLE1_ATTACKS = ("FGSM", "FGSM-TI", "MI-FGSM", "MI-FGSM-TI", "DIM", "DIM-TI")
TABLE1_VICTIM = "IncRes-v2ens"
TABLE1 = {  # source -> defence -> success rate (%) per attack of TABLE1_ATTACKS
    "Inc-v3": {"JPEG": (19.9, 25.5, 20.3, 28.2, 30.7, 37.0), "NRP": (3.2, 4.8, 4.5, 9.1, 5.1, 11.0)},
    "Inc-v4": {"JPEG": (21.8, 27.9, 26.0, 31.6, 38.6, 43.5), "NRP": (3.1, 4.4, 4.8, 10.3, 5.2, 12.5)},
    "IncRes-v2": {"JPEG": (24.7, 32.4, 31.6, 45.9, 47.2, 55.7), "NRP": (3.5, 6.9, 7.6, 18.7, 7.5, 20.8)},
    "Res-v2-152": {"JPEG": (24.0, 32.7, 31.2, 38.3, 42.4, 50.8), "NRP": (3.4, 6.5, 5.8, 11.9, 6.3, 17.8)},
    "Ensemble": {"JPEG": (38.1, 43.3, 67.7, 77.2, 82.5, 83.4), "NRP": (3.7, 7.9, 10.1, 27.8, 11.4, 31.9)},
}
TABLE2_CLEAN = {"No defence": 97.8, "JPEG": 97.6, "NRP": 95.6}  # IncRes-v2ens clean top-1 (%), Table 2
