"""Run a command as this process's only child and print its peak RSS in MiB (from the OS)."""
import resource
import subprocess
import sys

if __name__ == "__main__":
    code = subprocess.run(sys.argv[1:]).returncode
    print(f"peak_rss_mib={resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.1f}")
    sys.exit(code)
