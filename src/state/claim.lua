-- logwarden incident claim: KEYS[1] claim key; ARGV[1] replica id, ARGV[2] ttl ms.
-- Returns 1 when this call took the claim, 2 when this replica already held it (the expiry is
-- renewed), 0 when another replica holds it.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 2
end
return 0
