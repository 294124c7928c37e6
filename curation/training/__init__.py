"""Fine-tuning with Ultralytics, evaluation, the YOLO dataset layout, and one training round as steps."""
