"""Rewards are plain callables `(images, prompts) -> rewards`.

`images` is a float tensor (B, C, H, W) in [0, 1], `prompts` a list of B strings, and the
result a float tensor (B,). Any such callable is a reward: point `reward._target_` at it.
"""
