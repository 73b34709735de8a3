"""The shipped OCR prompt sets (`${prompt_set:ocr_signs}`, `${prompt_set:ocr_signs_eval}`): each asks
for a short text in double quotes, the text reward=ocr reads back (Flow-GRPO's prompt format,
e.g. 'A wooden sign that says "Open"'). Written by this module, not copied from a dataset:
every (scene, text) pair of the lists below, in a fixed shuffled order; the first 40 for
evaluation, the rest for training, no text shared between the two.

    python -m rlft.prompts.ocr     # rewrites ocr_signs.txt and ocr_signs_eval.txt
"""

import random
from pathlib import Path

SCENES = [
    'A wooden sign in a forest that says "{}"',
    'A neon sign on a brick wall that reads "{}"',
    'A chalkboard menu outside a cafe with the words "{}"',
    'A street banner that says "{}"',
    'A coffee mug printed with the text "{}"',
    'A birthday cake with "{}" written in icing',
    'A T-shirt with "{}" printed on the front',
    'A road sign on a highway that says "{}"',
    'A book cover titled "{}"',
    'A shop window with "{}" painted on the glass',
    'A poster on a subway wall that reads "{}"',
    'A handwritten note on a desk that says "{}"',
]
TEXTS = [
    "Open", "Closed", "Welcome", "Sale", "Exit", "Hello World", "Fresh Coffee", "Stop", "Good Luck",
    "Happy Birthday", "No Parking", "Rain Or Shine", "Best Day Ever", "Keep Calm", "Dream Big",
    "Free WiFi", "Lost And Found", "Since 1998", "Bake Sale", "Gold Rush", "Night Market",
    "Ocean View", "Green Garden", "Move Fast", "Stay Curious", "Paper Moon", "Last Call",
    "Hot Soup", "Blue Harbor", "Quiet Please", "Open Late", "Fast Food", "Pizza Night",
    "Book Club", "Go Team", "Wild West", "Star Light", "Mind The Gap", "Dog Park", "Snow Day",
]
EVAL_TEXTS = 8  # the last 8 texts are held out: evaluation prompts only
EVAL_PROMPTS = 40


def ocr_prompts(seed: int = 0) -> tuple[list[str], list[str]]:
    """-> (train, eval): every scene with every training text, and 40 pairs with the held-out texts."""
    train_texts, eval_texts = TEXTS[:-EVAL_TEXTS], TEXTS[-EVAL_TEXTS:]
    rng = random.Random(seed)
    train = [scene.format(text) for scene in SCENES for text in train_texts]
    evaluation = [scene.format(text) for scene in SCENES for text in eval_texts]
    rng.shuffle(train)
    rng.shuffle(evaluation)
    return train, evaluation[:EVAL_PROMPTS]


def write(directory: Path = Path(__file__).parent) -> None:
    train, evaluation = ocr_prompts()
    (directory / "ocr_signs.txt").write_text("\n".join(train) + "\n")
    (directory / "ocr_signs_eval.txt").write_text("\n".join(evaluation) + "\n")


if __name__ == "__main__":
    write()
