"""Pure rendering: Axolotl recipes, sbatch scripts, lm-eval commands; validate.py runs Axolotl's own checks."""
