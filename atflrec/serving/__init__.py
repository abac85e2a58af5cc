"""Serving the ATFLRec model with Ray Serve: scores for given candidates, top-k recommendations,
cold-start items from uploaded audio, several models side by side.

``prefix`` scores one history against many candidates with a shared prompt prefix, ``scorer``
holds a loaded artifact with its audio-encoding cache, ``catalogue`` the items that can be scored,
``schemas`` the HTTP API, ``app`` the Serve deployment and the app builder that Serve configs name.
"""
