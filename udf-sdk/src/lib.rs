//! Guest-side SDK for Apiary UDFs (filled in by the UDF issue).
