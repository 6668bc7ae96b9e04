"""Published re-ranking baselines (PRM, DLCM, Seq2Slate) and the point-wise initial ranker for LETOR."""
