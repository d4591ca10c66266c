"""Optional LSQ fine-tuning of an exported QDQ model, trained in a separate onnxruntime-training environment."""
