"""Run a command as this process's only child and print its peak RSS in MiB and the CPU seconds
(user + system) it and its own children used, both from the OS."""
import resource
import subprocess
import sys

if __name__ == "__main__":
    code = subprocess.run(sys.argv[1:]).returncode
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"peak_rss_mib={usage.ru_maxrss / 1024:.1f} cpu_s={usage.ru_utime + usage.ru_stime:.2f}")
    sys.exit(code)
