"""Model loading: real Qwen2.5-VL checkpoints and the tiny offline model share one code path."""

from visd_exp.models.loading import load_model_and_processor, vision_token_ids

__all__ = ["load_model_and_processor", "vision_token_ids"]
