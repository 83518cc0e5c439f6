package intercept

// IdleOrigins is the number of origin connections kept between requests.
func (s *Server) IdleOrigins() int { return s.pools.Idle() }
