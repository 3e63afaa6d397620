"""Cross-task evaluation (Tables 2 and 4): detection, instance and semantic segmentation."""
