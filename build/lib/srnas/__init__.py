"""The srnas command and the orchestration across stages: pipeline, its report, ablation, comparison, deploy."""
