"""Input: data sources (digits, npz, folder, ArrayRecord) and the Grain batch pipelines."""
