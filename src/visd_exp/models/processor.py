"""The processor: Qwen2.5-VL's own, with frames fed as images (the Open-o3-Video input style).

transformers' video processors need torchvision, which has no CPU wheel here, and the stock
`Qwen2_5_VLProcessor` refuses to be built without one. This subclass accepts `video_processor=None`;
everything else (placeholder expansion, `mm_token_type_ids`, the chat template) is the stock code.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer, Qwen2_5_VLProcessor, Qwen2VLImageProcessorPil


class FramesProcessor(Qwen2_5_VLProcessor):
    """`Qwen2_5_VLProcessor` for image inputs only (video = a sequence of timestamped frames)."""

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name == "video_processor" and argument is None:
            return None
        return super().check_argument_for_proper_class(argument_name, argument)


def load_processor(path: str | Path, local_files_only: bool = True) -> FramesProcessor:
    """Tokenizer (with its chat template) + image processor from a checkpoint directory or hub id."""
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local_files_only)
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(path, local_files_only=local_files_only)
    processor = FramesProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=tokenizer.chat_template
    )
    processor.tokenizer.padding_side = "left"
    return processor


def save_processor(processor: FramesProcessor, path: str | Path) -> None:
    processor.tokenizer.save_pretrained(path)
    processor.image_processor.save_pretrained(path)
