"""The tools around runs: `rlft compare` (`compare`), `rlft plot` (`plot`), `rlft sample`
(`sample`), `rlft speed` (`speed`, with the SD1.5-size check in `size_check`), sample grids and
curves (`visualize`) and reading TensorBoard event files back (`tensorboard`)."""
