"""Where a cache lives: local folders and fsspec URLs, the objects in them, the build lock, the
local copy of a remote cache's shards, push / pull and the listing of a prefix. Every fsspec
call of the package goes through here."""
